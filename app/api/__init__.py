"""The HTTP layer: thin routers (parse, call one service function, answer), dependencies, errors."""
