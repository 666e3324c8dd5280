"""The sampler algorithms, one family a module; `t2i.sampling` is where they are registered and run."""
