"""2-D landscapes: log2 grids swept as trials, drawn as heatmaps with ridge fits."""
