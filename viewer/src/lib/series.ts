// Time series shown in the Timeline's graphs.

import type { BundleIndex, OutputSpec, TrajectoryData } from "./types";

export interface Series {
  key: string;
  title: string;
  colour: string;
  values: number[];
}

export function advantageSeries(index: BundleIndex, data: TrajectoryData): Series {
  return { key: "advantage", title: "advantage", colour: index.presentation.graph_colours.advantage ?? "blue",
           values: data.advantages };
}

/** The output's own value over time: the value function, a logit, or a logit sum. */
export function outputSeries(index: BundleIndex, data: TrajectoryData, output: OutputSpec): Series {
  const colours = index.presentation.graph_colours;
  if (output.kind === "value") {
    return { key: output.id, title: "value function", colour: colours.value ?? "green", values: data.values };
  }
  const values = data.logits.map((row) => output.actions.reduce((s, a) => s + row[a], 0));
  return { key: output.id, title: output.label,
           colour: (output.kind === "action" ? colours.action : colours.action_group) ?? "red", values };
}

/** Grey ramp of the actions, lightened as in the reference interface. */
export function actionColours(n: number): string[] {
  return Array.from({ length: n }, (_, i) => {
    const grey = n > 1 ? i / (n - 1) : 0;
    const v = Math.round((grey * 0.75 + 0.75 * 0.25) * 255);
    return `rgb(${v}, ${v}, ${v})`;
  });
}
