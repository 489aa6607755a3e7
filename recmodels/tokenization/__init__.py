"""Item tokenization: semantic IDs (RQ-KMeans code tuples), the item vectors they are built from,
and the prefix trie of real items that constrained decoding walks."""
from recmodels.tokenization.item_vectors import ItemVectorConfig, ItemVectors, build_item_vectors
from recmodels.tokenization.semantic_ids import SemanticIdConfig, SemanticIds, TokenLayout, build_semantic_ids
from recmodels.tokenization.trie import ItemTrie

__all__ = ["ItemVectorConfig", "ItemVectors", "build_item_vectors", "SemanticIdConfig", "SemanticIds",
           "TokenLayout", "build_semantic_ids", "ItemTrie"]
