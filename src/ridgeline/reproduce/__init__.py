"""Page's part 5 end to end: a plan fitted to a budget, run resumably, written up as a report."""
