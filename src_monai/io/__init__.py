"""Files in and out: scans with their exact geometry (NIfTI, NRRD, MetaImage), and writes that
are atomic (a file is complete or absent), CSV tables and figures among them."""
