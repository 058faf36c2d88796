"""Training: how to train as data (`config`), the one loop over transformers' Trainer (`loop`),
losses as plain functions picked by name (`losses`) and cached teacher outputs (`teacher`).
Nothing is imported here: a recipe is validated with `config` alone, without torch."""
