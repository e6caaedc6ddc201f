"""review-stack training job: fine-tunes an instruct model to write aspect-structured reviews.

Entry point `reviewstack-train SPEC [key=value …]` (main.py); the recipe (recipe.py) reads top to
bottom: setup → train → save; the components (rope, data, model, loss, checkpoint) are small modules.
"""
