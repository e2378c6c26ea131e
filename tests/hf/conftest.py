"""Transformers tests run offline: every model is built from a config, nothing is downloaded."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
