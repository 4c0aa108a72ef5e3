"""AI inference: series selection and volume preparation, the model contract, a Triton client
and a loopback Triton server started from the bundled ``nvidia-pytriton`` wheel."""
