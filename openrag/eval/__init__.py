"""The paper's evaluation: metrics, tasks, passage selection, the answering loop, threshold sweeps, reports."""
