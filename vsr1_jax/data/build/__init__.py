"""Raw videos + VERIFIED annotations -> the prepared layout: the original's construction steps as pure functions and
resumable file steps (numpy, PyAV, PIL; the embedder and the teacher come in as objects). The orchestration that
builds those models is `vsr1_jax/prepare.py`.

Modules: frames.py (decode + the original's frame choice and resize), annotations.py (01_data_generate),
select.py (top-1 pool, hard negatives, GRPO rows with balancing, test R@k), teacher.py (05_generate_match_grounding
prompts and response parsing), oneturn.py (06_convert_to_train_oneturn), store.py (atomic files, step markers,
chunked resumable outputs, progress bars), pipeline.py (the ordered steps).
"""
