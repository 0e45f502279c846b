"""Benchmarks behind ``make bench``. Each module exposes ``run() -> list[tuple[str, str]]``."""
