from actlab.links import neuronpedia_link


def test_neuronpedia_link():
    assert neuronpedia_link("gpt2-small/8-res-jb", 123) == "https://neuronpedia.org/gpt2-small/8-res-jb/123"
    assert neuronpedia_link(None, 1) is None
