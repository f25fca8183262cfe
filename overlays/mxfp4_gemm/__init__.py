"""mxfp4_gemm overlay."""
