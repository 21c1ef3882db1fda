"""What people look at. Evaluation (a run's test predictions against the truth, beside the floors),
the floors themselves, the Markdown/PNG report of a benchmark, prediction images, route maps, and the
benchmark and demo that train the three methods side by side on a rendered city."""
