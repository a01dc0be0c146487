"""What every stage of saekit stands on: errors, devices, fingerprints, atomic writes, output
directories and the provenance stamp. Nothing here imports another part of saekit."""
