"""mla_decode overlay."""
