"""AlpacaEval 2.0 with moa: crash-safe submission generation and a local length-controlled evaluation.

    generate  an ensemble's answers to the 805 instructions, checkpointed per instruction, written atomically
    evaluate  a submission against the reference, judged pairwise, with win rate and LC win rate

The command line is ``moa alpaca-eval generate|evaluate`` (moa/commands/alpaca_eval.py).
"""
