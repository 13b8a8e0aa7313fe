"""Training the nano model: synthetic data, tokenizer, recipe stages and export."""
