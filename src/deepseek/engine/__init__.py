"""The inference engine: scheduler, paged cache, runner, sampler, detokenizer."""
