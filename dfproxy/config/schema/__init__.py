"""Config schema models of the policies, one module per option family."""
