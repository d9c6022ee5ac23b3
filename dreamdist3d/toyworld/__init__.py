"""dreamdist3d.toyworld: a world small enough to learn and generate on two CPU cores.

- vocabulary.py: shapes, placements, the colour palette, size/aspect words and synonyms, hue arithmetic
- objects.py: the object grammar (ObjectSpec / PartSpec labels, ObjectGrammar sampling, interpolation, geometry)
- captions.py: canonical captions and paraphrases; `mentioned` maps text back to labels
- render.py: pure-torch SDF renderer from MVDream cameras (FOVY_DEG, CAMERA_DISTANCE framing)
- refsets.py: named reference sets with attribute supports (one held out)
- attributes.py: attribute reader with out-of-world rejects; Naeem et al. precision/recall/density/coverage
- attribute_features.py: the reader's analytic image analysis (colours, silhouette) and attribute feature vectors
- data.py: the toy backbone's training data (render cache, batches, text conditioning)

The world only: it imports nothing above backbones/text (no recipes, launch, commands, learn, lift3d or export).
"""
