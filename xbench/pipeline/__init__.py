"""Layer 2, the pipeline: plain functions on built objects (a job, its sources, caches, training, scoring, results and report). No Hydra."""
