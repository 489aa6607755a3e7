"""Data layer: raw logs in, reward-labeled and split interactions out, plus their quality checks.

raw_logs (contract) -> sources (MovieLens wheels or files) -> rewards + splitting -> interactions,
checked by quality (Great Expectations) and stored with tables (atomic parquet, digests).
"""
