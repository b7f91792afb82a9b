"""The reference applications, beside the platform: churn (a telco simulator and its demo)
and x-ray (the image cascade kind, its networks, generated x-rays and its demo).

They use copml's public functions and register their model kinds through the
``copml.kinds`` entry-point group; the platform itself never imports them.
"""
