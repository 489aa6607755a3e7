"""Item tokenization: how a policy sees an item.

The tokenizations: `interface.py` (what every stage asks of one), `atomic_items.py` (one token per item),
`semantic_items.py` (L+1 semantic-ID codes per item) and `items.py` (their registry and the lookup of the one
a policy, config or record speaks: import from there). They build on the models and decoding, which import
this package, so they are not imported here. Here: semantic IDs (RQ-KMeans code tuples), the item vectors
they are built from (features, a trained model's item embeddings, or text embeddings of the catalog), and the prefix trie of real items that constrained decoding walks."""
from recmodels.tokenization.item_vectors import ItemVectorConfig, ItemVectors, build_item_vectors, embedding_item_vectors
from recmodels.tokenization.semantic_ids import SemanticIdConfig, SemanticIds, TokenLayout, build_semantic_ids
from recmodels.tokenization.text_vectors import text_item_vectors
from recmodels.tokenization.trie import ItemTrie

__all__ = ["ItemVectorConfig", "ItemVectors", "build_item_vectors", "embedding_item_vectors", "text_item_vectors",
           "SemanticIdConfig", "SemanticIds",
           "TokenLayout", "build_semantic_ids", "ItemTrie"]
