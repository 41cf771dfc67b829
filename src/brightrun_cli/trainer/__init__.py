"""The brightrun trainer: a program of its own, run by `accelerate launch`.

    accelerate launch -m brightrun_cli.trainer runs/<job_id>/spec.json
    python -m brightrun_cli.trainer spec.json        # one process, no launcher

It reads one job spec and talks to the rest of brightrun only through files in its run
directory (docs/ARCHITECTURE.md, "The supervisor / trainer file contract"). It imports
nothing from cli/, services/, registry/ or storage/.
"""
