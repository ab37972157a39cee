"""The sidecar injector (``scopegate inject``, DESIGN §8): a mutating admission webhook that adds the
scopegate sidecar to pods annotated ``scopegate.io/inject: "true"``.

It shares the CLI and the ops listener with the gate and imports nothing else of it: a pure mutation
(``patch.py``), the AdmissionReview envelope (``review.py``), certificate files reloaded when they change
(``tls.py``) and the process (``server.py``).
"""
