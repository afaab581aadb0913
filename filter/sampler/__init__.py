"""The constrained keyframe sampler (reference Part 2 §A/§B): a plain function of the networks it is given."""
