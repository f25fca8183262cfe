"""MI355X readiness without an MI355X, all checkable on a CPU: the AOT compile report with register/LDS/occupancy
figures and machine-code fingerprints (`speedrun kernels compile`, specs compiled by eval/kernels/aot.py), its check
against an H100's own figures (`--check-device`) and a labelled MI355X roofline estimate (`speedrun kernels
roofline`); plus the checks of a multi-GPU run (ranks.py, scripts/device/multi_gpu.sh). Nothing here runs inside
SGLang: aiter's weight/scale layouts, which serving code uses, are in overlays/mx/aiter_layouts.py."""
