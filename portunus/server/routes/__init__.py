"""One blueprint per resource; handlers parse, call the model, render."""
