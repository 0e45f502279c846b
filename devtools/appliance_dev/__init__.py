"""Development tools: the demo, the benchmarks and the simulated rooms (not shipped to devices)."""
