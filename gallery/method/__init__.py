"""The method of "Understanding RL Vision": advantages, integrated-gradients attribution,
NMF, dataset examples and rendering."""
