"""The constrained keyframe sampler (docs/method.md §1–§2): a plain function of the networks it is given."""
