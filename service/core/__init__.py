"""The core: projects, items, labels, metrics, heatmaps, signed media. No Label Studio here."""
