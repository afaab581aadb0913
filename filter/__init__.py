"""The streaming filter graph, video I/O, keyframe renderers and the `rerender` command line."""
