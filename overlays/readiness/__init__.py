"""MI355X readiness without an MI355X: AOT compile report with register/LDS/occupancy figures (`speedrun
kernels compile`), a labelled MI355X roofline estimate (`speedrun kernels roofline`) and torch versions of
aiter's weight/scale layouts, all checkable on a CPU."""
