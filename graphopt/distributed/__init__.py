"""The multi-process runtime: stages of a plan run on several processes through torch.distributed."""
