"""Code generation and runtime for fused kernels (Triton): codegen returns source strings; the
runtime compiles, caches and launches them."""
