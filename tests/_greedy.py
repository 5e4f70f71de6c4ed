"""Options of a greedy ``generate`` that a test compares token by token with a hand-written loop.

``GREEDY``: no end-of-sequence token (every row generates all its new tokens whatever it picks)
and pad id 0; ``SCORED`` also returns each step's scores in a dict-like output.
"""

GREEDY = dict(do_sample=False, eos_token_id=[], pad_token_id=0)
SCORED = GREEDY | dict(output_scores=True, return_dict_in_generate=True)
