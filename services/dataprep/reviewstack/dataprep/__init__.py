"""review-stack data-prep: papers and their human reviews in, aspect-structured fine-tuning data out.

Entry point: `reviewstack-dataprep` (main.py) serves the DataPrep gRPC service; `reviewstack data …`
(cli.py) runs the same build locally or against a server.
"""
