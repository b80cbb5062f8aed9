"""Checkpoint I/O, one module per concern (imports run top to bottom; nothing here imports upward):

  safetensors_io.py  safetensors files read (memory-mapped, headers checked) and written (streamed), sharded folders
  orbax_io.py        orbax: save/restore one parameter pytree; the keep-N async CheckpointManager of training
  layout.py          the converted folder (vsr1_checkpoint.json, config.json, params/, hf_files/, query_embedder/),
                     `Converted`, `ConvertError` and the helpers the readers and writers share
  hf_read.py         an HF folder checked from its headers, then read into our layer-stacked arrays
  write.py           hf_to_orbax and orbax_to_hf, bit-exact both ways, staged so a failure leaves nothing
  read.py            the runtime reader: a checkpoint path (converted, HF, or a training step) -> `Models`
  hf_export.py       in-memory models or a train state -> a released-layout HF folder
  surgery.py         init_stage1: base policy + <REFINE> + fresh SQR head + base embedder -> the Stage-1 start
  cli.py             `python -m vsr1_jax.convert` (vsr1_jax/convert.py is the entry point that runs it)

Which models a config means (the demo's tiny ones or a checkpoint) is vsr1_jax/loading.py.
"""
