import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { fileURLToPath } from "node:url";

// Builds the viewer as one ES module (viewer.js) plus its stylesheet (viewer.css) into the
// Python package, where `gallery interface` copies them next to each bundle.
export default defineConfig({
  plugins: [svelte()],
  build: {
    outDir: fileURLToPath(new URL("../gallery/viewer_dist", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    lib: {
      entry: fileURLToPath(new URL("./src/main.ts", import.meta.url)),
      formats: ["es"],
      fileName: () => "viewer.js",
      cssFileName: "viewer",
    },
  },
});
