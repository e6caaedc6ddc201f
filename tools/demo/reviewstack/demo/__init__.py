"""`reviewstack demo`: the whole method on one machine, through the gRPC services.

bundled sample → dataset (DataPrep service) → a short LoRA + Position-Interpolation fine-tune of the
embedded SmolLM2-135M-Instruct (Training service, local launcher), which shows the training machinery →
its merged model, and the shipped reviewer (the seed table's best adapter, `models/`, merged onto the
same base at start-up), each served by the embedded engine behind a Review service → the sample's test
papers reviewed by the CPU fine-tune, and by the shipped reviewer at λ = 0 and at λ > 0 → all three
evaluated against the human reviews and compared (Evaluation service) → report.html.

Each service runs as its own process on loopback with a bearer token, as it would in a cluster, and each
stage is the CLI verb a user would type (`reviewstack data build --server …`), so the progress shown is
theirs. Nothing here imports a service: only their entry points and command lines are used. A second run
reuses what the first finished (the dataset version, a succeeded training run, papers already reviewed).

A tool of the checkout, not a service: no image carries it, and it finds the bundled sample, the CPU
training config and the shipped reviewer in the checkout it was installed from, whatever the working
directory. `cli` is the command; `stack` starts the services and prints the stages.
"""
