"""review-stack training controller: run specs in, training jobs launched and followed.

Entry point: `reviewstack-training` (main.py) serves the Training gRPC service over a local or a
Kubernetes launcher; `reviewstack train …` (cli.py) runs a job on this machine, talks to a server, or
prints the Kubernetes Job of a run. The trainer itself is the training job (training-job/,
`reviewstack-train`); this package only launches it and reads what it reports.
"""
