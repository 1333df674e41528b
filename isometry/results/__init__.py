"""Results: atomic result files (`io`), summaries over seeds with their intervals and
corrections (`stats`), and the figures drawn from a run's files (`plots` for the theory,
`training_plots` for a training run). This part imports nothing else of the package.
"""
