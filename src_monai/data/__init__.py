"""Data: MSD datasets on disk, patient-level splits, intensity transforms, training samples,
and ``lasc prepare``'s statistics."""
