"""The 68 iBUG points as FaceMesh indices.

Chosen by anatomy on the canonical FaceMesh topology, in iBUG order (subject's right side first, which is
the image's left for a frontal face): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59,
inner lips 60-67. Readers crop lips with 48-60 and eyes with 36-48; the tests check that those boxes hold
the mouth and eyes on real clips.
"""

JAW = [127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356]
RIGHT_BROW = [70, 63, 105, 66, 107]
LEFT_BROW = [336, 296, 334, 293, 300]
NOSE_BRIDGE = [168, 197, 5, 4]
NOSE_BOTTOM = [75, 97, 2, 326, 305]
RIGHT_EYE = [33, 160, 158, 133, 153, 144]
LEFT_EYE = [362, 385, 387, 263, 373, 380]
OUTER_LIPS = [61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91]
INNER_LIPS = [78, 81, 13, 311, 308, 402, 14, 178]

MESH_TO_68 = JAW + RIGHT_BROW + LEFT_BROW + NOSE_BRIDGE + NOSE_BOTTOM + RIGHT_EYE + LEFT_EYE + OUTER_LIPS + INNER_LIPS
assert len(MESH_TO_68) == 68
