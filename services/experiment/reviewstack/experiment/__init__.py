"""review-stack experiments: a spec of datasets, training variants, reviewing systems and comparisons,
run through the `reviewstack` verbs into one report (`reviewstack experiment run SPEC.yaml`)."""
