"""What every package of the project shares: user-input errors, the precision choice, the library adapter.

- ``user_input``: ``UserInputError`` (a mistake in what the user gave: exit status 2 and a ``HINT:``).
- ``precision_choice``: the precision a run trains in when the user does not say.
- ``lightning_private``: the only place that relies on non-public Lightning, jsonargparse or torch names.
"""
