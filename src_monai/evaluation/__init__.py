"""Evaluation: per-case 3D metrics, reports of many cases, and the demo on the bundled sample."""
