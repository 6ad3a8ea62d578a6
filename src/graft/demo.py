"""The bundled demo data: a small sample of the sign-language digits dataset (Apache-2.0)."""

from pathlib import Path


def demo_data_path() -> Path:
    return Path(__file__).parent / "demo_data" / "sign-language-digits"
