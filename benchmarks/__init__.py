"""Benchmarks: hand-run measurements whose results go into docs/benchmarks.md (with the date and machine).

Run them from the checkout root as modules, with Being and its plugins installed (``scripts/setup.sh``, or on
the GPU box the wheels ``tools/gpu/carry.py`` brings):

    python -m benchmarks.prepare_stages VIDEO          # landmarks + head-model fit speed (CPU)
    python -m benchmarks.audio_encoders MODELS...      # audio encoder throughput
    python -m benchmarks.docker_overhead               # each preprocessing stage in-process vs in its image
    python -m benchmarks.gpu_trainer RUN OUT           # rasteriser parity, training, fine-step and render speed (GPU)
    python -m benchmarks.gpu_quality RUN OUT VARIANTS  # held-out quality of trainer settings, seeds side by side
    python -m benchmarks.evaluate_model RUN MODEL.pt   # the trainer's evaluation again, on the CPU (LMD)
    python -m benchmarks.composite_ceiling RUN         # the PSNR a perfect head would score
    python -m benchmarks.lpips_check                   # the trainer's LPIPS against the lpips package
    python -m benchmarks.lipsync run RUN               # the mouth: held out, and in renders of new speech
    python -m benchmarks.folds make RUN OUT            # every stretch of a short clip held out in turn (+ score)
    python -m benchmarks.folds baseline RUN --leads 0,8  # what the audio alone predicts, windows moved later
    python -m benchmarks.expression_proxy RUN          # the deformer on the expression loss alone, over folds (CPU)
    python -m benchmarks.error_map VIDEO               # where the held-out error lies (constant, mouth, cells)
    python -m benchmarks.refiner RUN OUT               # held-out metrics with and without a refiner (GPU)
    python -m benchmarks.sd_turbo_speed carry          # the diffusion refiner's frames/s (GPU)
    python -m benchmarks.serve RUN OUT                 # live sessions per GPU and their latency
    python -m benchmarks.ray_batch carry SUBJECTS...   # being batch on Ray against one after another

They call the public API of the core and the plugins (the pipeline, the trainer's ``train``/``evaluate``,
``Avatar``, ``RunData``); none patches code or edits ``sys.path``.
"""
